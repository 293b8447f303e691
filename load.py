import asyncio, sys, statistics, uvloop
from bench.loadgen import Request, run_load
port = int(sys.argv[1]); conc = int(sys.argv[2]); n = int(sys.argv[3]); stream = len(sys.argv) > 4 and sys.argv[4] == "s"
body = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]' + (b',"stream":true' if stream else b'') + b'}'
path = "/v1/chat/completions" if port != 9107 else "/ok/v1/chat/completions"
async def main():
    r = await run_load(Request("127.0.0.1", port, path, body, expect=b"[DONE]" if stream else b""), concurrency=conc, requests=n, max_seconds=60)
    lat = sorted(r.latencies_s); tt = sorted(r.ttfb_s)
    print(f"n={r.requests} err={r.errors} rps={r.rps:.0f} p50={lat[len(lat)//2]*1000:.3f}ms ttfb50={tt[len(tt)//2]*1000 if tt else 0:.3f}")
uvloop.run(main())
