"""Button gestures and LED patterns (pure cores; gpiozero lives in the service wiring)."""
