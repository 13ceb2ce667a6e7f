"""Singer tap for the analytics API, built with the Meltano Singer SDK."""
