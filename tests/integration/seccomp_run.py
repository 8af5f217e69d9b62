#!/usr/bin/python3
"""Run a command under a seccomp profile in Docker's JSON format, without a container runtime:

    tests/integration/seccomp_run.py PROFILE.json [--deny NAME,...] -- COMMAND [ARG...]

The profile's defaultAction and its syscalls[].names/action entries are applied (the subset of
the format contrib/seccomp/pgring.json uses: no argument filters); --deny makes the named calls
fail with EPERM on top of it, as a runtime's default profile does for io_uring. Uses Debian's
python3-seccomp (libseccomp). The filter is installed in this process, then COMMAND is exec'd
with it (seccomp filters survive execve)."""

import errno
import json
import os
import sys

import seccomp

ACTIONS = {
    "SCMP_ACT_ALLOW": seccomp.ALLOW,
    "SCMP_ACT_ERRNO": seccomp.ERRNO(errno.EPERM),
    "SCMP_ACT_KILL": seccomp.KILL,
    "SCMP_ACT_KILL_PROCESS": seccomp.KILL_PROCESS,
    "SCMP_ACT_LOG": seccomp.LOG,
}


def action(entry, key, errno_key="errnoRet"):
    name = entry.get(key, "SCMP_ACT_ERRNO")
    if name == "SCMP_ACT_ERRNO" and errno_key in entry:
        return seccomp.ERRNO(int(entry[errno_key]))
    if name not in ACTIONS:
        sys.exit(f"seccomp_run: action {name} is not supported")
    return ACTIONS[name]


def main(argv):
    if "--" not in argv or len(argv) < 4:
        sys.exit(__doc__)
    cut = argv.index("--")
    options, command = argv[1:cut], argv[cut + 1:]
    profile_path, deny = options[0], []
    if len(options) == 3 and options[1] == "--deny":
        deny = [n for n in options[2].split(",") if n]
    elif len(options) != 1:
        sys.exit(__doc__)
    with open(profile_path) as f:
        profile = json.load(f)
    filt = seccomp.SyscallFilter(defaction=action(profile, "defaultAction", "defaultErrnoRet"))
    unknown = []
    for rule in profile.get("syscalls", []):
        if rule.get("args"):
            sys.exit("seccomp_run: argument filters are not supported")
        for name in rule["names"]:
            if name in deny:
                continue
            try:
                filt.add_rule(action(rule, "action"), name)
            except (RuntimeError, ValueError):
                unknown.append(name)  # not a call of this architecture or libseccomp
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO":
        # (Under an allow-list, a denied call is one it does not allow: nothing to add.)
        for name in deny:
            filt.add_rule(seccomp.ERRNO(errno.EPERM), name)
    if unknown:
        print(f"seccomp_run: not known here, left out: {' '.join(unknown)}", file=sys.stderr)
    filt.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
