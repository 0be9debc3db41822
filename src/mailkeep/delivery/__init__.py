"""The message path, readable top-down: accept → route each recipient → store → reply.

``pipeline.Pipeline`` is shared by every way mail comes in: the SMTP receiver (port 25),
LMTP (an existing Postfix delivering into Mailkeep) and ``mailkeep deliver`` (LDA).
"""
