"""Everything on screen. Talks to the engine only through its events and a RunControl."""
