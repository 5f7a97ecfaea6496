"""float64 numpy oracles: closed forms and independent implementations used by tests."""
