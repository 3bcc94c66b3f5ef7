"""One module per `dorl` command; each parses options and calls one library function.

Command modules import nothing heavy at module level so that `dorl --help` stays fast and
torch-free.
"""
