"""Subcommands of the ``convattn`` command, one module each (see ``convattn.cli``)."""
