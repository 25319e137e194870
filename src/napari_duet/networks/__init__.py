"""Neural networks shared by the engines (torch is imported by the modules, lazily by callers)."""
