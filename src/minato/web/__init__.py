"""Everything that speaks HTTP through Litestar: the app, its routes, doors, pages and rendering."""
