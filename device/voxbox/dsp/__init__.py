"""The capture front end: Speex echo canceller and preprocessor, residual echo suppressor, echo-delay alignment, echo state, recorder."""
