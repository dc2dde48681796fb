"""Storage: one database interface, implemented for SQLite and PostgreSQL."""
