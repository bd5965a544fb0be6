(CNN) -- The Oakridge council approved a new park on Friday.

The park will cost about 23 million dollars.

Mayor Maria Lopez said the project would help families across Oakridge.

Work is expected to begin in September.

Some residents said the money should be spent on roads instead.

@highlight

Oakridge council approves a new park

@highlight

The project will cost about 23 million dollars

