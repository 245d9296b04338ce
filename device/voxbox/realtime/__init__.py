"""The Realtime service: session core (sans-I/O), dialects, event schemas, token broker, link supervisor, held turn audio."""
