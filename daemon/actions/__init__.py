"""The action layer: everything that mutates an account goes through here."""
