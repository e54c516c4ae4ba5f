"""SavedModel directories: placeholder."""
from .errors import ExportRefused


def load_savedmodel(path):
    raise ExportRefused(f"{path}: SavedModel directories are not supported yet")
