"""The director: a causal LM that plans a cooking video step by step (actions, captions, visual states)."""
