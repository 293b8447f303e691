"""`make bench` / `python -m bench`: run every benchmark and write its results under bench/results/."""

from bench import translated

if __name__ == "__main__":
    translated.main()
