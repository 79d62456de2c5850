"""The typed study-file schema: every default of a study and every name it may use. The ground the
other packages read; it imports only the method library (whose configs are part of the schema) and
the data sources (what each dataset needs)."""

from hpsearch.config.schema import FieldError, StudyConfig

__all__ = ["FieldError", "StudyConfig"]
