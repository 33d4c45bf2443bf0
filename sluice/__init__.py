"""sluice: an actor-based event engine."""
