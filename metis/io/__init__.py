"""Input/output shared by the whole project: :mod:`metis.io.tables` reads data tables row by row."""
