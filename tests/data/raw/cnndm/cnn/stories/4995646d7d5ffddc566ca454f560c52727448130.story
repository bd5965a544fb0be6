(CNN) -- The Hawks beat the Comets 5 to 1 in Millbrook on Tuesday night.

Sara Chen scored twice in the second half.

The win moves the Hawks to the top of the league.

More than 7 thousand fans watched the game.

The Comets have now lost three games in a row.

@highlight

The Hawks beat the Comets 5 to 1

@highlight

Sara Chen scores twice in the second half

