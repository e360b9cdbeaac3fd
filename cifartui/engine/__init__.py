"""Everything that trains. Runs without the UI: nothing here imports textual."""
