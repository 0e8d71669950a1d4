"""Model families. Each file holds one family, its config and its loss_fn."""
