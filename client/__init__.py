"""qqchat's console client, installed as the ``qqchat_client`` package."""
