"""simpleflow: durable jobs and workflows whose only coordination point is the database."""
