"""Stable journald ``MESSAGE_ID`` per ``VOXBOX_EVENT`` kind (documented in docs/journald.md).

Each id is a 128-bit value written as 32 lowercase hex digits (the ``sd-id128`` form
journald expects), generated once with ``uuid.uuid4().hex``. They never change: a field
script or a fleet dashboard may match on them (``journalctl MESSAGE_ID=...``) and they are
the keys of a journal message catalog. A new event kind gets a new id here (and a line in
docs/journald.md); ``tests/test_report.py`` checks that every ``VOXBOX_EVENT`` value logged
by the package has one.

The journal handler adds ``MESSAGE_ID`` to a record that has a ``VOXBOX_EVENT`` with an
id here (see :func:`message_id`).
"""

from __future__ import annotations

MESSAGE_IDS: dict[str, str] = {
    "assistant_transcript": "7bade586ce434fbe81a2a22ee10ece59",
    "audio_device": "30a7d4cca64b47629b155d9e0f39bef9",
    "barge_in": "bbac223669194ea1bea239c4992325e0",
    "barge_in_confirmed": "e8ec0d9a4747495d9ba633f98fd786a0",
    "barge_in_paused": "99919608d01d41afafba457ec8a3b68a",
    "barge_in_resumed": "95e12a3bfd3a47a885bc9d61523d03a8",
    "broker_error": "760fdbecb084402486ffec47551b1038",
    "broker_token": "55913a0eb2584aac9050d30e7ba26c56",
    "button": "0d14d0b7cfdd451e9e8973d69f450d85",
    "clock_drift": "440c79012f7345eda86d7b8fc37e68b3",
    "config_error": "5462202bcce948a5bdfd1ff6f27af2ee",
    "config_warning": "b77e0e6003794f2d851e2a7815147cfa",
    "context_replay": "7380d8b3335d476dbc15fc748728ae9a",
    "deaf_microphone": "365358a4622d46b98c4688782b678b87",
    "earcon": "bb14c374df904b9b91b7c38605b60b19",
    "echo_delay": "6ac7aa6a7771441e93d21e18c3d4c240",
    "echo_measured": "60f31388f6304b3a9a36992ddcd9c076",
    "echo_realign": "15a44e4b5ce44c62a6a304b682013985",
    "echo_lost": "3d95fb83ee6f46fe920718a6946ad0f7",
    "loudspeaker_model": "78de2bacbe5f4dfc9cc873bff3f61ad2",
    "firstboot": "60feeaa5897a4d0789a98ebb6afd5e14",
    "gesture": "629fbe52a0194521989df329e7afeb08",
    "idle_audio": "c1afe936fb9045c0a9cbaf61636bc2d5",
    "led": "70201c85c5594572bedccd69dc8276a6",
    "link_down": "be376bd69d5f4ce5bf02f4fc1b4982cf",
    "link_fatal": "60021ffce65445d38f1aa75c0b0a4e10",
    "mute": "3486c30ec41145b78dae9ee65aef4c15",
    "playback_end": "74dc2cc33057486c87341c6453343dc6",
    "playback_start": "2b6f66f2f9da4826831c90a0087d2dc6",
    "prompt": "05842b2807f247f0829a9fe6e1281fd4",
    "protocol": "ca68fb292963443c8a8cee9e028c7ba1",
    "provisioned": "525d733a0a76476db4c14671369bea71",
    "ptt_short": "7fbc033f904b401398b5bdd531dee9c6",
    "ready": "672698a5de86479a889c1977ee30e1db",
    "reconnected": "f4964523ba47446bb82b862f5b156fcc",
    "recording": "c69bb4cadead41f093247246b92b0576",
    "metrics": "847f73f3c6224878a4ca62eb0d33cc36",
    "reply_audio_start": "262a57c33cd14a66b9e612c2260f3901",
    "reply_overflow": "7d65c14b0df24a2aaa62a7b2bc352ae9",
    "response_done": "c54f63ea681d424a84e2b14e3eaf6220",
    "response_start": "948d29658a4441b0aedbbdbfbed3a552",
    "rollover": "510c330a76a8485ba41aec01932177f4",
    "selftest": "5de2cf26515a4b3395c59b655a4872be",
    "service_error": "169f2fd0ae92463e817726289b1a62f7",
    "session": "42052488f8cf43e4812eeea90505585f",
    "session_ready": "3b91a951feb2453db5749d31afe65a50",
    "session_timeout": "5f8bda827f0f42748d7c50c1ebe3915c",
    "speech_started": "86d9b90502774caebba0b94c719a03c5",
    "speech_stopped": "a299e8a8f078410da5e548dad9f7e55c",
    "stall": "4636825091cb43df83b0cc4f3f7c9537",
    "start": "5189c3da7597465483aa1a03ec14346e",
    "state": "7c674cb51cc54611850b38f224cde48e",
    "state_file": "d3ae1673a99c4a6086655542a2a218c1",
    "stop": "c0c616a6331d4b66a2fb3961e636899d",
    "tool_call": "b3d7517ca1e842bc87bf4444b20e7be8",
    "turn": "36d403fcafad491e84c2d965c07de959",
    "turn_held": "a50790ae0cf14d1a8a14d7c1ce4fef67",
    "turn_resent": "5cb3eb119eaa482dabf56e355381b24b",
    "turn_resumed": "3a6d459128584171b3f50b4d6aac3627",
    "underrun": "a8e1d98af2ab40a4a4c8745f078cb122",
    "unprovisioned": "84624fbc2ba342bd928712756f5de1e7",
    "uplink_start": "d33733ed66324910b02c13bcebaee08a",
    "user_transcript": "f89930f063934484b31368c547c4c026",
    "volume": "678c09deffda45c682d53a17fd75da4e",
    "wake": "b8a87e8e99bc4aeaa2bdd68e8008a122",
    "watchdog_resumed": "80c722c42dfe49f2b8e27e5529442f5e",
    "watchdog_withheld": "bcad139764f44397a9c52ccca8c1e512",
    "near_end": "3a2358c1d174416785e9a7b1ee383cb5",
    "barge_in_check": "7bfebb3a143d4e18800caf8eb821d142",
    "uplink_gate": "4c52ca512d0c4639a4fcfd655e59d4e5",
    "echo_state": "da4a2eb7fd3b431c98205ecfbd198853",
    "reference_resync": "74c8038cfd4946788889ded8b5446316",
    "xrun": "978c1f9aae9542bd83bfe316800ce38b",
}


def message_id(event: object) -> str | None:
    """The ``MESSAGE_ID`` for a ``VOXBOX_EVENT`` value, or None for an unknown kind."""
    return MESSAGE_IDS.get(str(event)) if event is not None else None
