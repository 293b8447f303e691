"""Wire-format translation between the inbound APIs (OpenAI chat, the Responses API,
Anthropic Messages).

Pure functions and small stateful stream translators: no I/O, no vendor knowledge. The
vendor bridge (`proxy.vendors.bridge`) uses them when a request arrives in one format and
the deployment that serves it speaks the other.
"""
