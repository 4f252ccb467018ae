"""models of the tts package."""
