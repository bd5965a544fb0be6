(CNN) -- The Rovers beat the Comets 5 to 0 in Eastport on Friday night.

Anna Price scored twice in the second half.

The win moves the Rovers to the top of the league.

More than 8 thousand fans watched the game.

The Comets have now lost three games in a row.

@highlight

The Rovers beat the Comets 5 to 0

@highlight

Anna Price scores twice in the second half

