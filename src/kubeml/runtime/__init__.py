"""What happens inside one function invocation: its arguments, context, sync and execution."""
