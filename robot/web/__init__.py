"""The operators' console: `email-robot web`, a Starlette application in a process of its own
beside `run`, on the same robot.ini and database (a problem in the page never stops sending)."""
