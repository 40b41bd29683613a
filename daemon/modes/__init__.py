"""One thin entry per `--mode`: `async def run_<mode>(app) -> int`, loaded by name from
daemon/run.py, so a mode's heavy dependencies load only when it runs."""
