"""A saga: book a trip (hotel, card, flight), undo what was done when a later step fails or it is cancelled."""
