"""The SANA inference engine: configs, models, solvers, loading, and the Generator. No Qt here."""
