"""REST blueprints, one module per concept."""
