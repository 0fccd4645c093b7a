"""``lmobj`` and ``python -m lmobjectives``: the command line (:mod:`lmobjectives.cli`).

The entry point imports the command line (and with it torch) inside ``main``, so that a Ctrl-C
while the imports run, in the first second or two, ends in one line instead of a traceback.
"""

import sys

EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT (also lmobjectives.cli.EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("lmobj: interrupted while starting; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
