"""The conversation state machine and the tools the model may call."""
