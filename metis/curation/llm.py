"""The OpenAI-compatible chat client used by the curation judge (it lives in :mod:`metis.rl.chat_client`)."""

from metis.rl.chat_client import BadReply, ChatClient, JudgeUnavailable

__all__ = ["BadReply", "ChatClient", "JudgeUnavailable"]
