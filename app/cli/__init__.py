"""The command line, the app's second face beside the window: `latentdesk generate | inspect | train |
bench | measure`. It imports the engine (core/) and never Qt."""
