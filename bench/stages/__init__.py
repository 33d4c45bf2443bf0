"""Per-stage benchmarks: each module has `run(quick: bool) -> dict` and runs alone too.

python -m bench.stages.all            # every stage, results to bench/results/
python -m bench.stages.validation     # one stage
"""
