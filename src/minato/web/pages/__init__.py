"""The pages Minato serves itself: the API docs and the playground, from files in the package."""
