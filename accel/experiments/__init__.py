"""One module per chapter: its configs per profile (plain dataclasses) and one function per table or figure."""
