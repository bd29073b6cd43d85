"""`python -m xmtf_jax.build_xp3`: the entry point is `xmtf_jax.cli.build_xp3` (`--help` answers before it is imported).

Unlike the other commands this one imports neither jax nor TensorFlow before it works: the build
forks worker processes, which must not inherit their threads. `xmtf_jax.cli.errors` (which imports
both) formats a user's mistake only once one happened.
"""
import sys

from xmtf_jax.cli import quiet_start, usage  # standard library only


def main() -> int:
  """The `xmtf-build-xp3` console script."""
  if usage.answer_help("build_xp3"):
    return 0
  from xmtf_jax.cli import build_xp3  # the builder: no jax, no TensorFlow
  argv = sys.argv[1:]
  if "--traceback" in argv:
    return build_xp3.main([a for a in argv if a != "--traceback"])
  try:
    return build_xp3.main(argv)
  except Exception as error:  # noqa: BLE001  (a user's mistake gets one paragraph, a bug its traceback)
    failure = error
  quiet_start.import_tensorflow()
  from xmtf_jax.cli import errors  # only now: it imports jax and TensorFlow

  def raise_it(_argv):
    raise failure

  return errors.run(raise_it, build_xp3.__doc__, [], main_has_help=True)


if __name__ == "__main__":
  sys.exit(main())
