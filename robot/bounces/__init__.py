"""Delivery status notifications: the IMAP bounce mailbox and the parsing of its reports."""
