"""A warm standby interpreter for one local rank of holdfast's native launcher.

The agent starts one per local rank ahead of a relaunch: `python zygote.py MODULE...`. It imports
the modules (e.g. torch: 2-4 s that a relaunch no longer waits for), then waits for one line of
JSON on stdin:

    {"argv": ["train.py", "--flag", ...], "env": {"RANK": "0", ...}, "log": "/path/to/log"}

and becomes that rank: the variables are set, stdout and stderr go to the log, and the script
runs as `python train.py ...` would run it (`runpy.run_path` as `__main__`, `sys.argv` set, the
script's directory first on `sys.path`). Its exit status is the script's.

End of stdin without a launch (the agent discarded the standby, or went away) ends it at once.
The agent ships this file inside its binary; it runs on the job's own interpreter.
"""
import importlib
import json
import os
import runpy
import sys


def main():
    # While it only prepares, a standby should not slow the ranks that are training now. Only
    # root can raise the priority back, so only then is it lowered.
    lowered = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        original = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(original + 10, 19))
        lowered = True
    for module in sys.argv[1:]:
        try:
            importlib.import_module(module)
        except Exception as e:  # the script will import it again and report it properly
            print(f"holdfast standby: cannot import {module}: {e}", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    launch = json.loads(line)
    if lowered:
        os.setpriority(os.PRIO_PROCESS, 0, original)
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(launch["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.environ.update(launch["env"])
    if os.environ.get("PYTHONUNBUFFERED"):
        # What the variable would have done had the interpreter started with it.
        sys.stdout.reconfigure(line_buffering=True, write_through=True)
        sys.stderr.reconfigure(line_buffering=True, write_through=True)
    argv = launch["argv"]
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
