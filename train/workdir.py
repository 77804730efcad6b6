"""The work directory of a run: where every stage writes."""
import os


def check_workdir(workdir: str) -> str:
  """Creates the work directory and checks it is writable; raises naming the fix."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"--workdir={workdir} cannot be created ({e.strerror}); choose a writable "
                     "directory.") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={workdir} is not writable; choose a writable directory.")
  return workdir
