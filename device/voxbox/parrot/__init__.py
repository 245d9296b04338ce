"""The local Realtime server ("parrot"): a faithful stand-in for the service, for tests, demo and bench units."""
