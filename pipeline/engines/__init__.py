"""Model engines behind small protocols; heavy imports happen inside the engine modules only."""
