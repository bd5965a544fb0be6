(CNN) -- The Comets beat the Rovers 5 to 1 in Riverton on Friday night.

Paul Grant scored twice in the second half.

The win moves the Comets to the top of the league.

More than 16 thousand fans watched the game.

The Rovers have now lost three games in a row.

@highlight

The Comets beat the Rovers 5 to 1

@highlight

Paul Grant scores twice in the second half

