"""The protocol between the parent, the judges, the zygote and the workers: messages declared once, one codec."""
