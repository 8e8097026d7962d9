"""Server-side conversations: model, stores, and the rules that use them."""
