"""``lmobj`` and ``python -m lmobjectives``: the command line (:mod:`lmobjectives.cli`).

``lmobj --version`` is answered here, without importing the command line (and with it torch). For
everything else the entry point imports the command line inside ``main``, so that a Ctrl-C while the
imports run, in the first second or two, ends in one line instead of a traceback.
"""

import sys

from . import __version__

VERSION = f"lmobj (lmobjectives) {__version__}"  # what lmobj --version prints (here, and as the parser's --version)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C, the shell's convention for SIGINT (lmobjectives.cli imports it from here)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:  # what the parser would print, before anything heavy is imported
        print(VERSION)
        return 0
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("lmobj: interrupted while starting; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
