"""``python -m kvpool COMMAND``: kvpool's command line (python/README.md).

    python -m kvpool doctor [--coordinator HOST:PORT] [--secret-file PATH] [--json] ...

``doctor`` checks this install against a pool (kvpool/_doctor.py). The
package is imported before this module runs, so a libkvpool_c.so that cannot
be loaded ends the command with the package's ImportError, which names the
file and the fix.
"""

import argparse
import sys

from . import _doctor


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m kvpool", description="kvpool's command line")
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    doctor = commands.add_parser("doctor", help="check this install: the library, the pool, the secret, a round trip, "
                                 "the GPU path", description=_doctor.DESCRIPTION)
    _doctor.add_arguments(doctor)
    args = p.parse_args(argv)
    if args.command == "doctor":
        return _doctor.run(args)
    p.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
