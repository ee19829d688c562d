"""Examples of embedding slotfsm (not part of the installed package)."""
